"""Differential privacy: what a release spends (`privacy`: mechanisms, accountants, records; answers cached by
`epsilon_cache`), the noise that spends a budget (`calibration`), the DP control-code histogram (`histogram`), and
DP-SGD: its settings (`config`), training privately or not (`dpsgd`), its loop on Opacus (`private_training`), the
three ways it clips per-example gradients (`clipping`: Opacus' hooks, ghost clipping, book-keeping, the last in
`bookkeeping`), per-sample gradients of GPT-2's Conv1D (`conv1d_grad_sampler`), and training that spends no privacy,
kept at its best held-out check (`public_training`: public pretraining).
"""
