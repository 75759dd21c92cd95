"""Knowledge of the ASX shared by the services that need it (the trading calendar)."""
