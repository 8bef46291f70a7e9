"""Models: the two-tower recommender (text, item, user and query encoders) and baselines."""
