"""Training dual-encoder heads on locked pretrained towers (LiT): config, data, features, model, losses, loop."""
