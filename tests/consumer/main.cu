// Compiled by nvcc: the public headers and a user's host+device functor must compile there too,
// and the CPU path must still run.
#include "consumer.h"

int main() { return run_consumer(); }
