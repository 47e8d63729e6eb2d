"""What the exporter knows in memory: pairs, holdings, rates, run history and transcripts."""
