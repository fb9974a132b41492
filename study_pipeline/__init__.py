"""The study end to end (``study.py``): per fold, a GAN trained on that fold's training patients
only, synthetic slices, and the classifier arms on exactly the same fold and seeds."""
