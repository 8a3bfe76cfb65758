"""Training: the story (`train.py`), its Hydra entry, data sets, LoRA, optimizer strategy, checkpoints,
progress and extensions.

    qrtrain train model=tiny training.max_steps=5
"""
