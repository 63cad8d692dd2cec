"""Ablation studies: spec -> plan -> trials (run by Ray Tune) -> results folder."""
