"""``make bench`` (``python -m recexp.bench``): each section times one hot path against a reference measured in the same run."""
