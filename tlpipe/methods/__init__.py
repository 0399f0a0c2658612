"""Transfer methods, one module each: supervised training, fine-tuning strategies, DANN."""
