"""Code the test suites share: what the fixtures build on and the tests import.

The conftest.py files hold fixtures only; what those fixtures and the tests build on
lives here: real servers, settings and databases of a test's own, producing to and
reading from topics, waiting, in-process workers, the HTTP API and the command line;
and for the unit tests, in-memory fakes of the ports, Hypothesis strategies of valid
and hostile events, and the API's list queries and patched record.
"""
