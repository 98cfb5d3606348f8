"""Checks of the repository's files rather than its code: the README, the deployment
files and the operations files agree with the code and with each other.
"""
