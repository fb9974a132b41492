"""Stage 3: capsule classifiers and ResNet18 / ResNet50 baselines, patient-wise or leave-stretch-out training, t-SNE, prediction."""
