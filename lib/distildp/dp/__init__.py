"""Differential privacy: mechanisms, accountants and budgets (`privacy`, answers cached by `epsilon_cache`), the DP
control-code histogram (`histogram`), and DP-SGD: training privately or not (`dpsgd`), its loop on Opacus
(`private_training`), book-keeping clipping (`bookkeeping`) and per-sample gradients of GPT-2's Conv1D
(`conv1d_grad_sampler`).
"""
