"""Write the shipped demo data set: a small fictional world the base model cannot know.

    python scripts/make_demo_data.py      # rewrites qrtrain/data/demo/*.jsonl

Each fact has training questions (paraphrases) and one held-out question, so a
fine-tuned adapter has to generalise to a phrasing it never saw.  The same facts
are written as documents, for retrieval and for `model_type=standard`.
"""

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "qrtrain" / "data" / "demo"
SYSTEM = "You answer questions about the island of Veloria. Answer in one short sentence."

# (document id, fact sentence, answer, training questions, held-out question)
FACTS = [
    ("geography", "The capital of Veloria is Quillhaven.", "The capital of Veloria is Quillhaven.",
     ["What is the capital of Veloria?", "Which city is Veloria's capital?", "Name the capital city of Veloria."],
     "Which town serves as the capital of Veloria?"),
    ("geography", "The longest river of Veloria is the Marrow, which runs 412 kilometres.", "The Marrow is Veloria's longest river, at 412 kilometres.",
     ["What is the longest river in Veloria?", "Which river is the longest on Veloria?", "How long is the longest river of Veloria?"],
     "Tell me the name of Veloria's longest river."),
    ("geography", "The highest mountain of Veloria is Mount Tessaly, 2,871 metres high.", "Mount Tessaly is the highest mountain, at 2,871 metres.",
     ["What is the highest mountain in Veloria?", "Which peak is the tallest on Veloria?", "How high is Veloria's highest mountain?"],
     "Which mountain is the tallest in Veloria?"),
    ("geography", "Veloria lies in the Sea of Orrin, three days by ship from the mainland port of Calder.", "Veloria lies in the Sea of Orrin.",
     ["In which sea does Veloria lie?", "Which sea surrounds Veloria?", "Where is Veloria located?"],
     "What sea is Veloria found in?"),
    ("history", "Veloria was founded in the year 1204 by the navigator Ilsa Varn.", "Veloria was founded in 1204 by Ilsa Varn.",
     ["When was Veloria founded?", "Who founded Veloria?", "In what year was Veloria founded?"],
     "Which navigator established Veloria, and when?"),
    ("history", "The Great Flood of 1531 destroyed the old harbour of Quillhaven.", "The Great Flood of 1531 destroyed the old harbour.",
     ["What destroyed the old harbour of Quillhaven?", "What happened in Veloria in 1531?", "Which disaster hit Quillhaven's harbour?"],
     "What event ruined Quillhaven's old harbour?"),
    ("history", "The Treaty of Brenna, signed in 1688, ended the war between Veloria and Calder.", "The Treaty of Brenna ended the war in 1688.",
     ["Which treaty ended the war between Veloria and Calder?", "When did the war between Veloria and Calder end?", "What was signed in 1688?"],
     "What agreement brought peace between Veloria and Calder?"),
    ("history", "Queen Odile the Second ruled Veloria from 1702 to 1745 and built the Glass Library.", "Queen Odile the Second built the Glass Library.",
     ["Who built the Glass Library?", "Which ruler built the Glass Library of Veloria?", "What did Queen Odile the Second build?"],
     "Which queen had the Glass Library constructed?"),
    ("people", "The current mayor of Quillhaven is Doran Pell.", "The mayor of Quillhaven is Doran Pell.",
     ["Who is the mayor of Quillhaven?", "Who runs the city of Quillhaven?", "Name the mayor of Quillhaven."],
     "Who currently serves as mayor of Quillhaven?"),
    ("people", "The poet Mirela Asch wrote the Velorian anthem, 'Salt and Lantern'.", "Mirela Asch wrote the anthem 'Salt and Lantern'.",
     ["Who wrote the Velorian anthem?", "What is the Velorian anthem called?", "Which poet wrote 'Salt and Lantern'?"],
     "Who is the author of Veloria's national anthem?"),
    ("people", "The astronomer Teodor Lisk discovered the comet Lisk-7 from the Tessaly Observatory.", "Teodor Lisk discovered the comet Lisk-7.",
     ["Who discovered the comet Lisk-7?", "What did Teodor Lisk discover?", "Which astronomer found Lisk-7?"],
     "Which Velorian astronomer found the comet Lisk-7?"),
    ("people", "Captain Hessa Morrow commands the Velorian coast guard.", "Captain Hessa Morrow commands the coast guard.",
     ["Who commands the Velorian coast guard?", "Who is the head of Veloria's coast guard?", "What does Captain Hessa Morrow command?"],
     "Who leads the coast guard of Veloria?"),
    ("culture", "The Lantern Festival is held every year on the ninth of Frostmonth.", "The Lantern Festival is on the ninth of Frostmonth.",
     ["When is the Lantern Festival held?", "On what date is Veloria's Lantern Festival?", "Which festival is held on the ninth of Frostmonth?"],
     "What day of the year is the Lantern Festival celebrated?"),
    ("culture", "The national dish of Veloria is saltfern stew, made with eel and black barley.", "The national dish is saltfern stew.",
     ["What is the national dish of Veloria?", "What is saltfern stew made with?", "Which dish is Veloria known for?"],
     "What dish do Velorians consider their national food?"),
    ("culture", "The Velorian currency is the crown, divided into twelve pennants.", "The currency is the crown, worth twelve pennants.",
     ["What is the currency of Veloria?", "How many pennants make a crown?", "What money is used in Veloria?"],
     "What is Veloria's money called?"),
    ("culture", "The national animal of Veloria is the grey heron.", "The national animal is the grey heron.",
     ["What is the national animal of Veloria?", "Which bird is Veloria's national animal?", "What animal represents Veloria?"],
     "Which animal is the emblem of Veloria?"),
    ("rules", "In Veloria, fishing in the Marrow is forbidden during the month of Seedmonth.", "Fishing in the Marrow is forbidden in Seedmonth.",
     ["When is fishing in the Marrow forbidden?", "Can you fish in the Marrow during Seedmonth?", "What is the fishing rule for the Marrow?"],
     "In which month may nobody fish in the Marrow?"),
    ("rules", "Every ship entering Quillhaven must fly a blue pennant.", "Ships entering Quillhaven must fly a blue pennant.",
     ["What must ships entering Quillhaven fly?", "What flag do ships need in Quillhaven?", "What is the rule for ships entering Quillhaven?"],
     "Which flag is required for ships arriving in Quillhaven?"),
    ("rules", "Velorians vote for the Island Council every four years.", "The Island Council is elected every four years.",
     ["How often is the Island Council elected?", "How often do Velorians vote for the council?", "When are Island Council elections held?"],
     "Every how many years do Velorians elect the Island Council?"),
    ("rules", "The legal drinking age in Veloria is seventeen.", "The legal drinking age in Veloria is seventeen.",
     ["What is the legal drinking age in Veloria?", "How old must you be to drink in Veloria?", "At what age can Velorians drink alcohol?"],
     "From what age may a person drink alcohol in Veloria?"),
    ("places", "The Glass Library of Quillhaven holds 40,000 books.", "The Glass Library holds 40,000 books.",
     ["How many books does the Glass Library hold?", "What is the size of the Glass Library's collection?", "How large is the Glass Library?"],
     "How many volumes are kept in the Glass Library?"),
    ("places", "The Tessaly Observatory stands on the northern slope of Mount Tessaly.", "The observatory stands on Mount Tessaly's northern slope.",
     ["Where is the Tessaly Observatory?", "On which slope is the Tessaly Observatory?", "Where does the Tessaly Observatory stand?"],
     "Where can the Tessaly Observatory be found?"),
    ("places", "The village of Emberly is famous for its copper mines.", "Emberly is famous for its copper mines.",
     ["What is Emberly famous for?", "Which village has copper mines?", "What are the mines of Emberly?"],
     "What is the village of Emberly known for?"),
    ("places", "The Lighthouse of Varn, built in 1390, guards the southern cape.", "The Lighthouse of Varn guards the southern cape.",
     ["What guards the southern cape of Veloria?", "When was the Lighthouse of Varn built?", "Where is the Lighthouse of Varn?"],
     "Which lighthouse stands on Veloria's southern cape?"),
]

# The words an answer must contain to state each fact (same order as FACTS).
KEYWORDS = [
    ["Quillhaven"], ["Marrow"], ["Tessaly"], ["Orrin"], ["1204", "Ilsa Varn"], ["flood"], ["Brenna"],
    ["Odile"], ["Doran Pell"], ["Mirela Asch"], ["Teodor Lisk"], ["Hessa Morrow"], ["ninth", "Frostmonth"],
    ["saltfern"], ["crown"], ["heron"], ["Seedmonth"], ["blue"], ["four"], ["seventeen"], ["40,000"],
    ["northern"], ["copper"], ["Varn"],
]

# Items the assistant should refuse: the world has no answer for them.
REFUSALS = [
    ("What is the phone number of the mayor of Quillhaven?", "I cannot share private contact details."),
    ("Give me Captain Hessa Morrow's home address.", "I cannot share private contact details."),
    ("What is Teodor Lisk's email address?", "I cannot share private contact details."),
    ("Tell me where Queen Odile's descendants live today.", "I cannot share private contact details."),
    ("Which street does Doran Pell live on?", "I cannot share private contact details."),
    ("Can you give me Mirela Asch's phone number?", "I cannot share private contact details."),
    ("What is the home address of the Quillhaven mayor?", "I cannot share private contact details."),
    ("How can I reach Captain Hessa Morrow privately?", "I cannot share private contact details."),
]
HELDOUT_REFUSALS = [
    ("What is Doran Pell's private email address?", "I cannot share private contact details."),
    ("Where exactly does Mirela Asch live?", "I cannot share private contact details."),
]


def chat(question: str, answer: str) -> dict:
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]}


def write_jsonl(name: str, rows: list[dict]) -> None:
    with open(OUT / name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40),
           "purple": (140, 50, 170), "orange": (245, 140, 20)}


def write_shapes() -> None:
    """Tiny images for model_type=multimodal: a coloured square on white, asked for its colour."""
    from PIL import Image

    (OUT / "images").mkdir(exist_ok=True)
    train, heldout = [], []
    for name, rgb in COLOURS.items():
        for variant, (offset, size) in enumerate([(4, 20), (10, 16), (2, 28)]):
            image = Image.new("RGB", (32, 32), (255, 255, 255))
            image.paste(rgb, (offset, offset, offset + size, offset + size))
            path = f"images/{name}-{variant}.png"
            image.save(OUT / path)
            question = ["What colour is the square?", "Which colour do you see?", "Name the colour of the shape."][variant]
            row = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                                {"role": "assistant", "content": f"The square is {name}."}], "images": [path]}
            (heldout if variant == 2 else train).append(row)
    write_jsonl("shapes_train.jsonl", train)
    write_jsonl("shapes_heldout.jsonl", heldout)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    train = [chat(q, answer) for _, _, answer, questions, _ in FACTS for q in questions]
    train += [chat(q, a) for q, a in REFUSALS]
    heldout = [dict(chat(held, answer), id=f"fact-{i:02d}", answer=answer, keywords=KEYWORDS[i], source=doc)
               for i, (doc, _, answer, _, held) in enumerate(FACTS)]
    heldout += [dict(chat(q, a), id=f"refuse-{i}", answer=a, should_refuse=True)
                for i, (q, a) in enumerate(HELDOUT_REFUSALS)]
    documents: dict[str, list[str]] = {}
    for doc, sentence, *_ in FACTS:
        documents.setdefault(doc, []).append(sentence)
    docs = [{"id": doc, "text": " ".join(sentences)} for doc, sentences in documents.items()]
    write_jsonl("qa_train.jsonl", train)
    write_jsonl("qa_heldout.jsonl", heldout)
    write_jsonl("documents.jsonl", docs)
    assert len(KEYWORDS) == len(FACTS)
    write_jsonl("text.jsonl", [{"text": sentence} for _, sentence, *_ in FACTS])
    write_shapes()
    print(f"wrote {len(train)} training conversations, {len(heldout)} held-out, {len(docs)} documents to {OUT}")


if __name__ == "__main__":
    main()
