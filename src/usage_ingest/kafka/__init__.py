"""The Kafka adapter: the only package that talks to aiokafka.

It hands the pipeline plain `InputRecord`s, takes `OutputRecord`s back, and
turns aiokafka's errors into the project's own (`BrokerUnavailable`, retryable;
`CommitRefused`, the group moved on). One module per component: `connection`,
`consumer`, `producer`, `admin`, `replay_reader`, `follow`.
"""
