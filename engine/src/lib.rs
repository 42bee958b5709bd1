//! The RLT engine: candle models, tokenizer, chat templates, generation and log-probs.
