"""DistilDP's stages 2 and 3: synthetic text sampled from the DP teacher (`generate`, kept on disk by
`synthetic_store`), the KD loss and its batches (`kd`), the teacher's outputs cached once (`teacher_cache`) and a
student trained on the synthetic text (`synthetic_training`).
"""
