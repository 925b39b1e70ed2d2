"""Example flows: `getting_started` (a first RhapsodyRunner flow) and `ensemble` (HPC-style).

    python flows/getting_started.py
    python flows/ensemble.py --backend concurrent --members 4
"""
