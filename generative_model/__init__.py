"""Stage 2: conditional GAN (pix2pix U-Net + PatchGAN) that turns condition masks into MRI slices."""
