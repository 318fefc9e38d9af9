"""`tok eval`: token quality (bitrate, usage, PNMI/purity, ABX), resynthesis quality (MCD, STOI, PESQ,
SI-SDR, F0) and LM probes (perplexity, minimal pairs), with JSON and Markdown reports."""
