"""D-JEPA for class-conditional video (paper App. G.3): data, tokenizers, video-train / video-sample / video-eval."""
