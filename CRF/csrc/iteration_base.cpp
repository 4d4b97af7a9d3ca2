// The mean-field kernels for the target's baseline instruction set (SSE2 on x86-64).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <utility>

#define CRF_ISA base
#include "iteration.hpp"
