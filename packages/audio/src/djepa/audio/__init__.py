"""djepa.audio: D-JEPA for text-to-speech. Not built yet; see the project's issues."""
