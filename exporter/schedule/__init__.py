"""When pulls run: the next-run math and the loop that starts runs."""
