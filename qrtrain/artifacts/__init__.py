"""Artifacts: versions and publishing, the sha256 manifest, provenance and model card, verify, list,
package and unpack. `verify` and `list` import nothing heavy.

    qrtrain verify outputs/tiny-dialogue/v1
"""
