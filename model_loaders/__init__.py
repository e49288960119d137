"""Reading every real-world Wan file format into our native (official Wan) key names."""
