// See declarations.h: what ProcessGroupGloo.hpp needs of gloo.
#pragma once
#include "gloo/declarations.h"
