"""djepa.video: D-JEPA for class-conditional video. Not built yet; see the project's issues."""
