"""Text models: a pretrained encoder (:mod:`~recexp.models.text.encoder`) and the recommenders that read item texts with it."""
