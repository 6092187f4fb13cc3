//! Packet builders for BPF_PROG_TEST_RUN and raw sockets (being written).
