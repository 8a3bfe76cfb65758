"""`qrtrain synth`: training data generated from documents or templates, filtered, with provenance.

    qrtrain synth && qrtrain train data.train=outputs/synth/TIME/train.jsonl
"""
