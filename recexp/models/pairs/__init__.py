"""Few-shot models of labelled (history, item) pairs: small trained classifiers and the like-rate baselines."""
