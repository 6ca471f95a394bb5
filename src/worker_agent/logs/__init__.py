"""A job's log: the pump from job output to the file, secret masking, opening the file safely."""
