"""qrtrain: LoRA/QLoRA fine-tuning with verifiable adapter artifacts.

    qrtrain --help
"""

__version__ = "0.1.0"
