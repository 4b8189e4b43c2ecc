"""The duplicate-charge story: orders, a charge task, a producer that retries."""
