"""djepa.multimodal: D-JEPA for Transfusion-style text+image. Not built yet; see the project's issues."""
