/* BUNET native engines: the status codes every entry point returns (0 = success), shared by
 * bunet.gc._native and bunet.he._native (also parsed by cffi, keep it plain). Python maps each to
 * one exception (bunet/native_errors.py). */
#ifndef BUNET_STATUS_H
#define BUNET_STATUS_H

enum bn_status {
    BN_OK = 0,
    BN_ENOMEM = -1,   /* a working buffer could not be allocated */
    BN_EOPCODE = -2,  /* a circuit gate with an unknown opcode */
    BN_EINVAL = -3,   /* inconsistent arguments (sizes, circuit records, table specs) */
    BN_ERANDOM = -4,  /* the OS random source (getrandom) failed */
    BN_EPARAMS = -5   /* parameters the engine does not support (precision, OT set) */
};

#endif
