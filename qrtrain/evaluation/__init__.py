"""Evaluation: loss and answer quality of an adapter (`evaluate`), systems side by side (`compare`),
generation, retrieval, metrics and reports.

    qrtrain evaluate outputs/tiny-dialogue/v1
"""
