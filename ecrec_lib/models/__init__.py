"""Models: the served two-tower recommender (text, item, user and query encoders), its neighbourhood parts (item-kNN, user-kNN, SLIST), the blend and the learned ranker."""
