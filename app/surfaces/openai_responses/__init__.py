"""The openai_responses surface."""
