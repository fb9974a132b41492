"""Stage 3: capsule classifier and ResNet50 baseline, patient-wise training, t-SNE, prediction."""
