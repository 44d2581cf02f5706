"""Cross-domain trust measurements (``bench/quality.py``): domains, episode samplers, metrics,
protocols run through the app's own trust entry points, leave-one-domain-out fitting, report."""
