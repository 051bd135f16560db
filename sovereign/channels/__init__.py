"""What the two HTTP channels, the API (:mod:`sovereign.api`) and the console
(:mod:`sovereign.web`), share: the error-to-status table, the rate limits and the input
vocabulary. Neutral ground: nothing here imports either channel or the assembly
(:mod:`sovereign.bootstrap`), so each channel can use it without importing the other.
"""
