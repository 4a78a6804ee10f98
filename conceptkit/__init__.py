"""conceptkit."""
