"""EARTalking: streaming, audio-driven talking-head video (frame-by-frame GPT-style AR with SFA + FCIC)."""

__version__ = "0.1.0"
