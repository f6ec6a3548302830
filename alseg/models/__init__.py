"""Instance segmentation models built from config."""
