"""DistilDP's stages 2 and 3: synthetic text sampled from the DP teacher (`generate`, chunk by chunk in `chunks`, kept
on disk by `synthetic_store`), the KD loss (`kd`) and the batches and loss function that feed it (`kd_batches`), the
teacher's outputs cached once (`teacher_cache`) and a student trained on the synthetic text (`synthetic_training`);
and DP-OPD's loss on the student's own continuations of private prompts (`on_policy`).
"""
