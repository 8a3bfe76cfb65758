"""Data rows, shared by training and evaluation: reading and checking files, and the shipped demo data.

    qrtrain train data.train=my.jsonl
"""
