from dispatch_setup import all_days, small_city, small_day  # noqa: F401  (session fixtures)
