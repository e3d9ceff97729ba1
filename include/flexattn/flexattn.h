// flexattn: FlexAttention for C++. Include this one header.
#pragma once

#include "attention.h"
#include "block_mask.h"
#include "math.h"
#include "mods.h"
#include "paged.h"
#include "param.h"
#include "runtime.h"
#include "tensor.h"
#include "threads.h"
