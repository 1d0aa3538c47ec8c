"""Local sandboxes: mocks of the meter APIs meterflow talks to, served as real local servers."""
