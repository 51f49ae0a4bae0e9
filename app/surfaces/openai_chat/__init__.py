"""The openai_chat surface."""
