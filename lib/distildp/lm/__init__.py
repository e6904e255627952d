"""Language models without privacy: tokenizer, presets and encoding (`models`), the training loop and its settings
(`training`), the fused losses over the vocabulary (`fused_loss`), perplexity and the exact floor (`evaluate`) and
sampling the next token (`sampling`).
"""
