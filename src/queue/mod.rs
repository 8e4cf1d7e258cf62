//! Per-(destination, vMTA) queues of recipients and their retry timers.

pub mod timer;
